"""What an evaluation shows a person: figures (matplotlib, Agg) and a self-contained HTML report."""
