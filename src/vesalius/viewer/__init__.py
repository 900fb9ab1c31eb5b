"""The local web viewer: a case list with metrics and an interactive NiiVue view of image, prediction, reference."""
