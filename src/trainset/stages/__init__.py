"""Pipeline stages: each reads validated manifests and writes validated manifests.

Stage functions take plain paths and values so they can be called from Snakemake scripts,
tests or a notebook alike.
"""
