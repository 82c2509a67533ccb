"""Instruments and Kite accounts: the service's durable state, in PostgreSQL."""
