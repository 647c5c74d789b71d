"""Federations of many virtual devices on one machine."""
