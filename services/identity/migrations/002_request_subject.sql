-- An agency may ask that only the citizen signed in as one account answer (a service granting
-- that account something: transit's concession fares). NULL: whoever holds the ID.
ALTER TABLE verification_requests ADD COLUMN subject text;
