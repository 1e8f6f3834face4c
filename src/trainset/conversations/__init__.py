"""Conversation datasets: readers for the common shapes, one schema, roles and canonical form."""
