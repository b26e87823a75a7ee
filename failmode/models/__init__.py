"""Model loaders: timm classifiers, open_clip CLIP models and diffusers pipelines, from the Hub or local copies."""
