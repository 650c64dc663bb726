"""Entry points for `prefect.yaml` and `prefect deploy`: each file names one flow of
mlintern.flows, where the code lives (installed with the package, so a wheel has it too)."""
