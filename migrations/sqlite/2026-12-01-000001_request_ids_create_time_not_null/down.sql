-- Nothing to undo: the rebuilt table has the columns the first migration meant.
SELECT 1;
