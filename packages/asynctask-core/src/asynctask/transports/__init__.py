"""Transports that ship with the core: only ``localmem``, the in-process reference."""
