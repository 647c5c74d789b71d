"""Federated training pieces shared by the ClientApp, the ServerApp and the simulations."""
