"""Exact unlearning: sharded/sliced training plans, SISA, S3T, sequence selection and the deletion simulator."""
