"""The ``pgsql`` transport of asynctask (PostgreSQL through psycopg 3)."""
