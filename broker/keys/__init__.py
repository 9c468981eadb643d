"""Key custody. Knows nothing of OAuth."""
