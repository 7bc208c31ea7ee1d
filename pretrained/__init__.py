"""Bundled weights: one folder per name, each with config.json, model.safetensors and a model card README.md."""
