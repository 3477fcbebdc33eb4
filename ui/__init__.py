"""Streamlit glue for the QuantLens dashboard: session keys, cached adapters, shared widgets."""
