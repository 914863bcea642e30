"""A product-photo pipeline on Celery and mpstate: generate, upscale, and a provider's video."""
