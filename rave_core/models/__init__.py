"""The RAVE model family: PQMF, encoders, generators, discriminators, the RAVE container."""
