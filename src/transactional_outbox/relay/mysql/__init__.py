"""The relay's MySQL/MariaDB side behind :mod:`..database`'s interface: the binlog
source (:mod:`.source`, :mod:`.reader_process`, :mod:`.binlog`), the row decoder, the
startup checks and start position (:mod:`.startup`, :mod:`.checks`, :mod:`.resume`,
:mod:`.reach`) and :class:`.database.MySQLDatabase`.

Imports nothing here: the settings import :mod:`.resume`, and the database imports the
settings.
"""
