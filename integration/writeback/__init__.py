"""Write-back: signed Standard Webhooks status messages to the rules' destinations."""
