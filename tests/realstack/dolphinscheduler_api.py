"""The few DolphinScheduler REST calls the real-stack tests need (3.1 API), on the standard library.

Every answer is an envelope `{"code": 0, "msg": ..., "data": ...}`; a non-zero code is raised with its message.
The session is the `sessionId` cookie that /login sets.
"""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class RestApiError(RuntimeError):
    """The server answered with a non-zero code (or not at all)."""


class RestApi:
    def __init__(self, base: str, user: str, password: str) -> None:
        self.base = base
        self.user = user
        self.password = password
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def _call(self, method: str, path: str, params: dict[str, Any]) -> Any:
        query = urllib.parse.urlencode({key: value for key, value in params.items() if value is not None})
        url, body = f"{self.base}{path}", None
        if method == "GET":
            url = f"{url}?{query}" if query else url
        else:
            body = query.encode()
        request = urllib.request.Request(url, data=body, method=method)
        try:
            with self._opener.open(request, timeout=30) as response:
                envelope = json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RestApiError(f"{method} {path}: HTTP {error.code} {error.read()[:200]!r}") from error
        except (urllib.error.URLError, OSError) as error:
            raise RestApiError(f"{method} {path}: {error}") from error
        if envelope.get("code") != 0:
            raise RestApiError(f"{method} {path}: code {envelope.get('code')}: {envelope.get('msg')}")
        return envelope.get("data")

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params)

    def post(self, path: str, **params: Any) -> Any:
        return self._call("POST", path, params)

    def try_login(self) -> bool:
        """Log in; False while the server is not up yet (the start-up poll)."""
        try:
            self.post("/login", userName=self.user, userPassword=self.password)
        except RestApiError:
            return False
        return True

    def create_project(self, name: str) -> int:
        """The project's code; creates it unless it exists."""
        for project in self.get("/projects", pageNo=1, pageSize=100, searchVal=name)["totalList"]:
            if project["name"] == name:
                return project["code"]
        return self.post("/projects", projectName=name, description="kubeflow-tasks real-stack tests")["code"]

    def project_code(self, name: str) -> int:
        for project in self.get("/projects", pageNo=1, pageSize=100, searchVal=name)["totalList"]:
            if project["name"] == name:
                return project["code"]
        raise RestApiError(f"no project named {name!r}")

    def start_workflow(self, project: int, workflow: int) -> None:
        """Start a released workflow definition now (executors/start-process-instance; returns no id in 3.1)."""
        self.post(
            f"/projects/{project}/executors/start-process-instance",
            processDefinitionCode=workflow,
            scheduleTime="",
            failureStrategy="END",
            warningType="NONE",
            processInstancePriority="MEDIUM",
            taskDependType="TASK_POST",
            runMode="RUN_MODE_SERIAL",
        )

    def workflow_instances(self, project: int, workflow_name: str) -> list[dict]:
        data = self.get(f"/projects/{project}/process-instances", pageNo=1, pageSize=100, searchVal=workflow_name)
        return data["totalList"]

    def task_instances(self, project: int, workflow_instance: int) -> list[dict]:
        data = self.get(
            f"/projects/{project}/task-instances", pageNo=1, pageSize=100, processInstanceId=workflow_instance
        )
        return data["totalList"]

    def stop_workflow(self, project: int, workflow_instance: int) -> None:
        self.post(f"/projects/{project}/executors/execute", processInstanceId=workflow_instance, executeType="STOP")

    def task_log(self, task_instance: int) -> str:
        data = self.get("/log/detail", taskInstanceId=task_instance, skipLineNum=0, limit=10000)
        return data.get("message", "") if isinstance(data, dict) else str(data)
