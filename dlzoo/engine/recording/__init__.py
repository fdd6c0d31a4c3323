"""What a run records: the terminal display and TensorBoard events (tracking), the dashboard layout and HParams
records (dashboards, hparams), and the figures its Images tab shows (figures)."""
