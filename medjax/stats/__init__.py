"""Host statistics of model outputs: metrics, bootstrap intervals, significance tests,
calibration, operating points and subgroups. Pure numpy/scipy; nothing here trains."""
