"""Human-readable output: the segment table (text) and the HTML report with charts."""
