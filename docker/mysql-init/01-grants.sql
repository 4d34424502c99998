-- The relay streams the binlog: it needs replication privileges besides SELECT.
GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'outbox'@'%';
GRANT ALL PRIVILEGES ON *.* TO 'outbox'@'%';
