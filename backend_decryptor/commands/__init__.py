"""Owner-side one-shot commands of `backend-decryptor`: protect, export, decrypt, models."""
