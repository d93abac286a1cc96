"""Write-back into the CRM itself: destinations of kind `hubspot`, `salesforce` and `pipedrive`."""
