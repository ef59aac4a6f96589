"""Transport layer: addresses, dialling, and Secret Connection (sans-IO machine + trio stream)."""
