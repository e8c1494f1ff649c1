"""Accounts: credentials, tokens, the account service and the limits on guessing and registering."""
