"""Floor 11: `lnr-dist reproduce`: seeds x shared steps x compared methods, the report, figures, comparisons."""
