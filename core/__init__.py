"""All the platform's logic, grouped by stage (see kinds.py for every job kind). Never imports streamlit."""
