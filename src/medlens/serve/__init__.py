"""REST API and web page over predict/explain."""
