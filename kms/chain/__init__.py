"""Double-sign protection: the rule (state), the state file (store), the per-chain tracker."""
