-- Run once by the postgres container on its first start (compose.yaml).
create database orders;
create database catalog;
