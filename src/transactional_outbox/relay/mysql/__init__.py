"""The relay's MySQL/MariaDB database: the binlog source behind :mod:`..database`'s interface."""

from .database import MySQLDatabase

__all__ = ["MySQLDatabase"]
