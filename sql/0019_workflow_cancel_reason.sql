-- pgtasks 0019: a task cancelled by cancel_workflow says why.
--
-- 0012's cancel_workflow left `error` as it was (NULL, or an earlier attempt's failure) on
-- the tasks it cancelled, while a task cancelled because its parent ended FAILED or
-- CANCELLED reads 'cancelled: parent task 12 (transform) ended FAILED'. So `pgtasks
-- workflow ID`, task_status and WorkflowFailed.errors could not tell a workflow cancelled
-- on purpose from one that failed, and a running task kept the error of its previous
-- attempt as if that had ended it. Now every task it cancels gets
-- error = 'cancelled: workflow 7 (nightly) cancelled', in the same prefix as the parent
-- failure's. (cancel_task records no reason of its own: a single task cancelled by hand is
-- the operator's act, and its history row already says from which status.)
--
-- An earlier attempt's error is not lost: fail_task keeps one row per attempt in
-- task_errors. cancelled_by stays NULL, so a retried parent does not revive these tasks
-- (docs/workflows.md, "Failure semantics"). Everything else is 0012's function.

CREATE OR REPLACE FUNCTION pgtasks.cancel_workflow(workflow_id bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    wf_name text;
    reason text;
    running text[];
    n integer;
BEGIN
    SELECT w.name INTO wf_name FROM pgtasks.workflow_runs w WHERE w.id = cancel_workflow.workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgtasks: workflow % does not exist', coalesce(workflow_id::text, 'NULL')
            USING ERRCODE = 'PT508', HINT = 'SELECT id, name, state FROM pgtasks.workflows lists them.';
    END IF;
    reason := pg_catalog.format('cancelled: workflow %s%s cancelled', workflow_id,
                                coalesce(' (' || wf_name || ')', ''));
    PERFORM 1 FROM pgtasks.tasks t
      WHERE t.workflow_id = cancel_workflow.workflow_id
        AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING')
      ORDER BY t.id FOR NO KEY UPDATE;
    SELECT array_agg(t.id::text || ':' || t.attempt::text) INTO running
      FROM pgtasks.tasks t
     WHERE t.workflow_id = cancel_workflow.workflow_id AND t.status = 'RUNNING';
    UPDATE pgtasks.tasks t
       SET status = 'CANCELLED', finished_at = now(), error = reason,
           worker_id = NULL, lease_expires_at = NULL, deadline = NULL
     WHERE t.workflow_id = cancel_workflow.workflow_id
       AND t.status IN ('WAITING', 'PENDING', 'COMMIT', 'RUNNING');
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM pg_notify('pgtasks_cancel', r) FROM unnest(running) r;
    RETURN n;
END $$;

CALL pgtasks.secure_objects();
