"""One run assembled from its config around the loop: the run itself (run), a stacked run's members, one model's
setup and test scores, run folders, resuming, pretraining as a phase and transfer learning."""
