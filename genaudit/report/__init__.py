"""Results → rich tables, JSON/CSV files, pictures and plots (never prints by itself)."""
