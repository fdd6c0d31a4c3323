"""Many runs: the lecture ladder, the transfer study, hyper-parameter search (tune) and reports over run folders."""
