"""Data: readers -> one sample schema -> splits -> transforms -> torch datasets."""
