"""Model loaders: timm classifiers, open_clip CLIP models and diffusers pipelines, from the Hub or local copies; and
the one setup of a classifier on a dataset (`failmode.models.setup`)."""
