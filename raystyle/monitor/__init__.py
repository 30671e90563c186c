"""The monitor: a snapshot of Ray, Serve, GPUs and runs, and its Streamlit page."""
