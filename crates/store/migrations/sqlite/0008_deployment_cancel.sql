-- A running deployment asked to stop: who asked and why. The deployer
-- stops the script and records the deployment as cancelled.
ALTER TABLE deployments ADD COLUMN cancel_requested TEXT;
