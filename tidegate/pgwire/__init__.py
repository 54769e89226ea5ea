"""The PostgreSQL wire protocol (v3) in front of the sources a qk_ key may read.

BI tools connect with user = anything, password = a qk_ key, database = the organization id
or name. Every statement is governed as a REST request is: the key re-read, rate limited,
audited, and each table replaced by the rows the key may see now (see `session`).
"""
