"""The Streamlit app (`streamlit run app/main.py`): composes mythos_lens and probes, no maths."""
