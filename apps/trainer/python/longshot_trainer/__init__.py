"""Longshot's trainer: a small Wan2.1-architecture pipeline trained on generated shape clips.

Plain PyTorch modules (Debian's torch 1.13: no SDPA, no diffusers, no safetensors package), each
written from the published architecture with diffusers' tensor names, so the weights they save
form a diffusers pipeline directory that Longshot's engine (and diffusers) load. See
docs/trainer.md for the recipe and apps/trainer/grammar.json for the data.
"""
