"""Running a recipe: the pipeline, its run folder and lock, resume, checks of inputs, measurement on targets."""
