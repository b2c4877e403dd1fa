-- Holds a batch expired, found again in the same transaction to announce them
-- (store.expired_holds): by resolution time, then exactly by the row's writer.
CREATE INDEX holds_expired ON holds (resolved_at) WHERE resolution = 'expired';
