"""The engine: one run in one process, in wings whose imports only go down: recording (terminal and TensorBoard),
training (the loop, its state, checkpoints and stopping), assembly (a run built from its config, its folders and
resuming) and inference (`dlzoo eval` and `dlzoo predict`)."""
