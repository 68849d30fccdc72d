"""Operating the fleet: drift, flow metrics, doctor, fleet status, resume, model cards,
crashed runs and the retrain guard."""
