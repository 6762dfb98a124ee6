"""The paper's steps, one file each: screen, retrieve, assemble (and the baselines' assembly),
train. Verification runs in actors/verifier.py. Above world/; never imports eval/ or driver/."""
