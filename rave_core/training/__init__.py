"""Training: the RAVE schedule (phase 1 representation, phase 2 adversarial), checkpoints."""
