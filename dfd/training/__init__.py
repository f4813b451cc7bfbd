"""Training: the face-crop datasets and epoch order, augmentations (per image and per batch), the step, optimisers
and learning-rate schedules."""
