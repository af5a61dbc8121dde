"""All the platform's logic: specs, jobs, workers, models. Never imports streamlit."""
