-- pgtasks 0017: a failure's error and traceback are clipped to settings.max_log_bytes.
--
-- fail_task stored whatever text a worker sent: an exception whose message holds a large
-- payload (a whole request body, a repr of a big object) or a traceback of a deep recursion
-- went into the task row and its task_errors row in full, once per attempt. A log line over
-- the limit is refused (PT204, 0004) because its caller can shorten it and try again; a
-- failure cannot be refused, since the attempt has ended either way and refusing it would
-- lose the failure itself. So it is kept within the same limit: the start and the end (a
-- Python traceback ends with the innermost frames and the exception), with a marker saying
-- how many characters were left out between them. The limit counts characters, which is
-- what length() and left() measure; for text in ASCII, bytes.

CREATE FUNCTION pgtasks.clip_text(value text, max_chars integer) RETURNS text
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
    SELECT CASE WHEN value IS NULL OR length(value) <= max_chars THEN value
                ELSE left(value, max_chars / 2)
                     || format(E'\n[... %s characters left out ...]\n', length(value) - max_chars)
                     || right(value, max_chars - max_chars / 2) END
$$;

CREATE OR REPLACE FUNCTION pgtasks.fail_task(
    task_id     bigint,
    attempt     integer,
    error       text,
    traceback   text     DEFAULT NULL,
    retryable   boolean  DEFAULT true,
    retry_delay interval DEFAULT NULL       -- exact delay (Retry(delay=...)); else backoff
) RETURNS pgtasks.status
LANGUAGE plpgsql
SET search_path = pg_catalog, pgtasks, pg_temp
AS $$
DECLARE
    t       pgtasks.tasks;
    longest integer := (SELECT s.max_log_bytes FROM pgtasks.settings s);
BEGIN
    -- run_at becomes now() + retry_delay: the same 100-year bound as a submit's run_at.
    IF retry_delay IS NOT NULL
       AND NOT (retry_delay >= interval '0' AND retry_delay <= interval '100 years') THEN
        RAISE EXCEPTION 'pgtasks: retry_delay must be between 0 and 100 years, got %', retry_delay
            USING ERRCODE = 'PT119', HINT = 'Leave retry_delay out (NULL) for the task''s backoff.';
    END IF;
    t := pgtasks.lock_owned_task(task_id, attempt);
    -- Only text over the limit pays for clip_text (a call with its own settings): measured
    -- with the calls unconditional, a short failure cost ~7 % more than before 0017.
    IF length(fail_task.error) > longest THEN
        fail_task.error := pgtasks.clip_text(fail_task.error, longest);
    END IF;
    IF length(fail_task.traceback) > longest THEN
        fail_task.traceback := pgtasks.clip_text(fail_task.traceback, longest);
    END IF;
    RETURN pgtasks.record_failure(t, coalesce(nullif(fail_task.error, ''), 'unknown error'),
                                  fail_task.traceback, coalesce(retryable, true), retry_delay);
END $$;

CALL pgtasks.secure_objects();
